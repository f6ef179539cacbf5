"""Multi-process tests: real worker processes sharing one PostgreSQL database."""
