"""PostgreSQL access shared by the services: connections, migrations, the catalog."""
