"""Where state lives: the database (SQLite or PostgreSQL) and one list of migrations."""
