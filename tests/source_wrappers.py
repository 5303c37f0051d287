"""A training data source wrapped by a test: everything but `__next__` goes to the inner one."""


class ForwardingSource:
    def __init__(self, inner):
        self.inner = inner

    def __iter__(self):
        return self

    def __next__(self):
        return next(self.inner)

    def get_state(self):
        return self.inner.get_state()

    def set_state(self, state):
        self.inner.set_state(state)

    def stats(self):
        return self.inner.stats()
