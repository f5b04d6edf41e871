"""Guards on what the project pays Novita: daily caps per user and for the project (`daily`), the
balance breaker every instance shares (`breaker`), and `Idempotency-Key` records (`idempotency`).

May import `shared.core`, `shared.google`, `shared.novita` and `shared.sketch`.
"""
