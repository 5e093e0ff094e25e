"""The base of every error a user can fix (bad data, bad config): shown without a traceback."""


class UserError(Exception):
    """Something in the user's input is wrong; the message says what and how to fix it."""
