import WardenCommands

Warden.main()
