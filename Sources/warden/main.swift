import WardenCommands

Warden.runMain()
