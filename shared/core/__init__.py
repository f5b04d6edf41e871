"""What every other part uses: configuration (`config`), the timings that must stay in order
(`timings`), structured logs, deadlines, backoff, text rules, the project's own tokens, and HTTP over
the standard library (`http`).

Imports nothing from the rest of `shared`. `config`, `timings` and `tokens` use the standard library
only: deploy.sh runs them with the operator's own `python3`.
"""
