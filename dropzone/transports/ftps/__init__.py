"""The FTPS dropzone (explicit TLS over FTP, RFC 4217): one package, primitives only.

    connect.py    how FTPS connects: AUTH TLS, the certificate check, the login
    errors.py     what an FTPS server error means: one table, one ``translate``
    transport.py  ``FtpsTransport``: the ``Transport`` primitives as FTP commands
"""

from dropzone.transports.ftps.connect import certificate_fingerprint, fetch_certificate_fingerprint
from dropzone.transports.ftps.errors import translate
from dropzone.transports.ftps.transport import FtpsTransport

__all__ = ["FtpsTransport", "certificate_fingerprint", "fetch_certificate_fingerprint", "translate"]
