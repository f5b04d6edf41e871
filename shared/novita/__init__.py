"""Novita's API: the client that builds every request Novita receives (`client`), the models of
what Novita answers, in either of its documented layouts (`models`), and what a webhook delivery
says (`webhook`).

May import `shared.core` and `shared.media` (the still a Kling request carries).
"""
