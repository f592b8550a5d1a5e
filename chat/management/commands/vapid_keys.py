"""`manage.py vapid_keys`: a new VAPID key pair for Web Push (docs/operations.md "Notifications").

Prints the private key as the VAPID_PRIVATE_KEY environment line to give every process, and the
public key browsers subscribe with (the server derives it from the private key and sends it in
`welcome.data.vapid_public_key`). Generating a new pair invalidates every stored subscription:
browsers must subscribe again, so keep the key with the deployment's other secrets.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from chat.services.notification_config import _public_of, generate_vapid_private_key


class Command(BaseCommand):
    help = "Generate a VAPID key pair for Web Push and print it as environment settings."

    def handle(self, *args: Any, **options: Any) -> None:
        private = generate_vapid_private_key()
        self.stdout.write(f"VAPID_PRIVATE_KEY={private}")
        self.stdout.write(f"# public key (sent to browsers in welcome.data.vapid_public_key): {_public_of(private)}")
