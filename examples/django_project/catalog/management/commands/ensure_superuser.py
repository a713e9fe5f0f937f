"""Create the admin superuser, or reset its password: `up` may run any number of times."""

import os

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError


class Command(BaseCommand):
    help = "Create or update a superuser; the password comes from $STACK_ADMIN_PASSWORD."

    def add_arguments(self, parser):
        parser.add_argument("--username", default="admin")

    def handle(self, *args, username, **options):
        password = os.environ.get("STACK_ADMIN_PASSWORD", "")
        if not password:
            raise CommandError("STACK_ADMIN_PASSWORD is empty")
        User = get_user_model()
        user, created = User.objects.get_or_create(username=username)
        user.is_staff = user.is_superuser = user.is_active = True
        user.set_password(password)
        user.save()
        self.stdout.write(f"superuser {username!r} {'created' if created else 'updated'}")
