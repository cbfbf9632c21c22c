"""Photos: the store (validation, bounded-memory decode), faces, framing (the crop)."""
