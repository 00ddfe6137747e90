"""storefront server."""
