"""Google's REST APIs without the client SDKs (whose imports cost a cold start 200-330 ms each), over
the standard library's HTTP (`shared.core.http`): the shared call and error rules (`api`), Firestore,
Pub/Sub and Cloud Storage.

May import `shared.core` only.
"""
