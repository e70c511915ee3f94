"""mtlsgw: a mutual-TLS gateway on Twisted.

Verifies client certificates, authorizes each request from the client's identity, and streams
allowed requests to an upstream with identity headers the application can trust.
"""

__version__ = "0.1.0"
