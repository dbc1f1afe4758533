"""The platform every function needs: settings, errors, HTTP, logging, database and migrations, auth, users,
Firestore access and its mirror, health and audit. It imports no domain (checked by import-linter)."""
