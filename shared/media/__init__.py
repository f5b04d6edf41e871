"""Media from URLs that arrive from outside: which URLs may be fetched (`policy`, a decision made
before any connection), the pinned, deadline-bound download (`fetch`), and the still's check (`still`).

May import `shared.core` only.
"""
