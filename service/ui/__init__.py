"""A read-only web page for people: each model's fold proof, live figures and a try-it box (``BNFOLD_UI``).

Its assets (HTML, CSS, JavaScript) ship in this package under ``static/``: no CDN, no build step.
"""

from service.ui.routes import add_page

__all__ = ["add_page"]
