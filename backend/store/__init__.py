"""Storage: SQLModel table definitions, the engine, and the queries the services use."""
