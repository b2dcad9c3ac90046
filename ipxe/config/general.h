/*
 * Kiln: features stage1 needs beyond upstream's defaults (ePoxy enables
 * the same): HTTPS downloads, and commands to reboot or power off a
 * machine whose boot failed and to check its network by hand; and the
 * image trust commands (imgtrust, imgverify) with which a stage1 built to
 * trust the operator's CA checks what it chains.
 */
#define DOWNLOAD_PROTO_HTTPS
#define REBOOT_CMD
#define POWEROFF_CMD
#define PING_CMD
#define NSLOOKUP_CMD
#define IMAGE_TRUST_CMD
