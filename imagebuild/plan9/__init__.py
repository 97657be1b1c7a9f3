"""Plan 9 behaviour shared by the modules that replay 9front tools (libc parsing, C arithmetic)."""
