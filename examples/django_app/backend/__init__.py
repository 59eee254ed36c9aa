"""A complete Django backend on amo_oauth: sign-in, amoCRM's routes and the account's leads."""
