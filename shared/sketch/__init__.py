"""The sketch: the create request and its rules (`request`), the stored document, its states and
what it needs next (`model`), the names its media are kept under (`objects`), the API's answers
described (`schemas`) and its error codes (`errors`), the one conditional-write path to Firestore
(`store`), and the gallery's pages (`gallery`).

May import `shared.core` and `shared.google`.
"""
