"""Every external store behind one interface each, its strategy chosen once from its URL:
the lake and the training sets in it, the MLflow registries, the SQL warehouse, the source
database. No module outside ``stores/`` looks at a URL's scheme."""
