"""A sketch's life after the request: making it (`creation`), the queue that carries its steps
(`queue`, `topology`), the steps themselves, one module each (`check`, `seedream`, `chain`,
`copy`; dispatched by `steps`), their shared plumbing (`work`, `lease`, `links`), the one path
that applies a task result (`results`), and recovery (`recovery`).

May import everything else in `shared` but `runtime` and `ops`.
"""
