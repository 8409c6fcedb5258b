"""dbslower: live slow-query tracing for PostgreSQL and MySQL/MariaDB with eBPF."""

__version__ = "0.2.0"
