//! Fake of the OAuth authorize/token (authorization_code), profile and models endpoints for the login tests.
