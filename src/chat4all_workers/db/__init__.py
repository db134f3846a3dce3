"""PostgreSQL: the pool factory, the migrations and the queries roles share."""
