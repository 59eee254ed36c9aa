"""The example backend's command line (Django's ``manage.py``).

    python examples/django_app/manage.py runserver

serves it on http://127.0.0.1:8000 against FakeAmoCRM (without ``AMO_CLIENT_ID`` set; see
``backend/amo.py``), with sync views over ``AmoOAuth``. ``README.md`` beside this file says more.
"""

from __future__ import annotations

import os
import sys


def main() -> None:
    """Run a Django management command with the example's settings."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "backend.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
