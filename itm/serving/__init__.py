"""Using a trained run: ``itm.Matcher`` (``matcher``) and the web app of ``itm serve`` (``server``)."""
