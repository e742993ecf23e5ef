"""rtagent: keep realtime KVM guests realtime."""

__version__ = "0.1.0"
