from django.apps import AppConfig


class DemoConfig(AppConfig):
    """The demo utility loader. It sits above every app and may import all of them."""

    name = "demo"
