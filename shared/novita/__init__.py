"""Novita's API: the client that builds every request Novita receives (`client`), and the models of
what Novita answers, in either of its documented layouts (`models`).

May import `shared.core` and `shared.media` (the still a Kling request carries).
"""
