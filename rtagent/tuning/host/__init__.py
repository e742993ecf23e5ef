"""The host wing: kernel threads, IRQs and workqueues off the realtime CPUs,
per-CPU kernel threads above the vCPUs — and back again.

``kthreads`` classifies host kernel threads (pure), ``priority`` is the one
vCPU-priority computation (shared by ``rtagent host apply`` and the daemon),
``plan`` turns a :class:`~.plan.HostSnapshot` into typed actions (pure),
``ledger`` keeps the saved originals, ``enforcer`` applies and restores
through the kernel floor, ``report`` is what both return.
"""
