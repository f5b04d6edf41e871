"""The cold-start yardstick: a bare functions-framework function that answers a constant."""

import functions_framework


@functions_framework.http
def bare(request):  # type: ignore[no-untyped-def]
    return "ok"
