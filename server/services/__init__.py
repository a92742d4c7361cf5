"""The service floor: domain rules shared by routes, the scheduler and the UI, above the store
and below the routes (routes and the scheduler import services; services never import them)."""
