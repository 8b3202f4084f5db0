"""The web dashboard served by the API app: templates and static assets.
No business logic lives here.
"""
