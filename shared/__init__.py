"""The library both functions import. Its subpackages, each importing only those listed after it:

- `pipeline`: a sketch's life: making it, the steps (check, seedream, chain, copy), results,
  recovery, the queue that carries the steps. May import everything below.
- `spending`: guards on what Novita is paid: daily caps, the balance breaker, idempotency keys.
- `sketch`: the sketch itself: the request, the document and its states, the store, the gallery.
- `edge`: the HTTP edge of both functions: the body guard, JSON answers, CORS, who is calling.
- `novita`: Novita's API: the client and the models of what it answers.
- `media`: fetching media from a URL safely, and judging a still.
- `google`: Google's REST APIs (Firestore, Pub/Sub, Cloud Storage) over httpx, without the SDKs.
- `core`: configuration, timings, logs, deadlines, tokens: the standard library and pydantic only.

`runtime` wires one instance's clients together; `ops` holds the operator's commands; `openapi`
describes `create_sketch`'s HTTP API from the models it validates and answers with. Every
`__init__` imports nothing, so that `deploy.sh` can run `shared.core.config`,
`shared.core.tokens` and `shared.pipeline.topology` with a bare `python3`.
"""
