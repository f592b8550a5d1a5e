"""Date formats of the site's templates (FORMAT_MODULE_PATH): the admin shows times with seconds."""
