"""The HTTP edge both functions share: the body guard under each function (`guard`), JSON answers
and strict JSON bodies (`answers`), CORS (`cors`), and who is calling (`callers`).

May import `shared.core` only.
"""
