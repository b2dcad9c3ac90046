/*
 * Kiln: features stage1 needs beyond upstream's defaults (ePoxy enables
 * the same): HTTPS downloads, and commands to reboot or power off a
 * machine whose boot failed and to check its network by hand.
 */
#define DOWNLOAD_PROTO_HTTPS
#define REBOOT_CMD
#define POWEROFF_CMD
#define PING_CMD
#define NSLOOKUP_CMD
