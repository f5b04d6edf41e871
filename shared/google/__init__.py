"""Google's REST APIs over httpx, without the client SDKs (whose imports cost a cold start
200-330 ms each): the shared call and error rules (`api`), Firestore, Pub/Sub and Cloud Storage.

May import `shared.core` only.
"""
