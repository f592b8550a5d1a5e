"""Demo users and a demo conversation, idempotent: `make run` calls it on every start."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from chat.models import Conversation, Tier, User
from chat.services.conversations import conversation_create, conversation_member_add, user_create

DEMO_PASSWORD = "demo-password"
DEMO_USERS = [("alice", Tier.PRO), ("bob", Tier.FREE), ("carol", Tier.ENTERPRISE)]


class Command(BaseCommand):
    help = "Create the demo users (alice, bob, carol; staff: admin) and a demo conversation."

    def handle(self, *args: Any, **options: Any) -> None:
        users = {}
        for username, tier in DEMO_USERS:
            user = User.objects.filter(username=username).first()
            users[username] = user or user_create(username=username, password=DEMO_PASSWORD, tier=tier)
        if not User.objects.filter(username="admin").exists():
            user_create(
                username="admin", password=DEMO_PASSWORD, tier=Tier.ENTERPRISE, is_staff=True, is_superuser=True
            )
        if not Conversation.objects.filter(title="Demo: ask the assistant", created_by=users["alice"]).exists():
            created = conversation_create(creator=users["alice"], title="Demo: ask the assistant")
            conversation_member_add(
                conversation_id=str(created.conversation.id), actor_id=users["alice"].id, username="bob", role="member"
            )
            conversation_member_add(
                conversation_id=str(created.conversation.id),
                actor_id=users["alice"].id,
                username="carol",
                role="viewer",
            )
        self.stdout.write(
            "Demo users: alice (pro), bob (free), carol (enterprise, viewer in the demo conversation), "
            f"admin (staff) — password for all: {DEMO_PASSWORD}"
        )
