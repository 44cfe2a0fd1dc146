# placeholder until the data plane lands
def _placeholder():
    return None
