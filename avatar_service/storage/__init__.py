"""Where files live: avatars written atomically, and retention."""
