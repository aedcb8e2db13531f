"""Publishing releases to an origin (file://, WebDAV over HTTPS, S3) and proving what it serves."""
