"""Where files live: one storage interface (local folders or an S3 bucket), avatars, retention."""
