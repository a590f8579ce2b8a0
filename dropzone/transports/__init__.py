"""Dropzone transports: each supplies file primitives (``base.Transport``) for one kind of server.

``filesystem`` (a local or mounted directory), ``sftp/`` (paramiko) and
``ftps/`` (ftplib). None holds any delivery logic: ``dropzone.delivery`` does,
and ``dropzone.connectors.open_dropzone`` is the one way to open one.
"""
