"""A sketch's life after the request: making it (`creation`), the queue that carries its steps
(`queue`, `topology`), the steps themselves, one module each (`check`, `seedream`, `chain`,
`copy`; dispatched by `steps`), their shared plumbing (`work`, `lease`, `paid`, `links`, `forms`),
the one path that applies a task result (`results`), recovery (`recovery`), and what the owner may
do with a sketch afterwards: start it again from its kept still (`retry`), delete it (`deletion`).

May import everything else in `shared` but `runtime`, `ops` and `openapi`.
"""
