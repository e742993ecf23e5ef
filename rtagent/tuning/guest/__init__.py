"""The per-guest pipeline: intent → observe → plan → apply.

``observe`` reads a QEMU process, ``plan`` is pure (what each thread should
look like and the ordered actions), ``apply`` executes actions, ``rtgroup``
plans and writes RT group budget, ``engine`` strings them together for one
guest.  The daemon, the one-shot commands and the benchmarks all go through
this package.
"""
