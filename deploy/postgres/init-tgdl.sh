#!/bin/sh
# Run once by the postgres image when it initialises an empty data volume (mounted under
# /docker-entrypoint-initdb.d/): the role tgdl's services log in as, which owns their
# database and is no superuser. POSTGRES_USER stays the image's superuser, for
# administration only. The password comes from .env (TGDL_POSTGRES_PASSWORD), never
# from this file.
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
     -v role=tgdl -v password="${TGDL_POSTGRES_PASSWORD:?set TGDL_POSTGRES_PASSWORD in .env}" <<'SQL'
CREATE ROLE :"role" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION PASSWORD :'password';
CREATE DATABASE :"role" OWNER :"role";
SQL
