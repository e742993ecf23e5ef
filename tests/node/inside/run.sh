#!/bin/bash
# Payload entry point inside the node (called by rtagent-node-runner).
cd "$(dirname "$0")"
exec /usr/bin/python3 -u scenarios.py "$@"
