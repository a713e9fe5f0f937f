"""Seed rows: 5 authors with 8 books each, enough for the N+1 page to run 41 queries."""

from django.db import migrations

AUTHORS = ["Ada Byron", "Brian Kernighan", "Grace Hopper", "Ken Thompson", "Barbara Liskov"]
BOOKS_PER_AUTHOR = 8


def seed(apps, schema_editor):
    Author = apps.get_model("catalog", "Author")
    Book = apps.get_model("catalog", "Book")
    for i, name in enumerate(AUTHORS):
        author = Author.objects.create(name=name)
        Book.objects.bulk_create(
            Book(title=f"{name.split()[-1]}, volume {n + 1}", author=author, stock=(i * 7 + n * 3) % 20)
            for n in range(BOOKS_PER_AUTHOR)
        )


def unseed(apps, schema_editor):
    apps.get_model("catalog", "Author").objects.filter(name__in=AUTHORS).delete()


class Migration(migrations.Migration):
    dependencies = [("catalog", "0001_initial")]

    operations = [migrations.RunPython(seed, unseed)]
